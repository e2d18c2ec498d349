"""A direct tool-use loop over Amazon Bedrock's Converse API (boto3 ``bedrock-runtime``).

The model gets four file tools confined to the worktree (``tools.py``; only the
two reading ones when it is asked for a plan). Throttling is retried by
botocore's standard retry mode (exponential backoff with jitter) for at most
BEDROCK_MAX_ATTEMPTS calls; then, and for any other error, the run ends with
its cause named as the claude-code executor names it (``apierrors``). Credentials
come from boto3's usual chain (task role, env); they never enter the prompt.

Each call has connect and read timeouts and runs in a daemon thread
(``threads``), so a cancelled or hung call never keeps a stopping edge alive.
"""

from __future__ import annotations

import logging

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from control.executors import apierrors, tools
from control.executors.base import Emit, ExecutionError, RunRequest, RunResult, build_prompt
from control.executors.threads import call_in_daemon_thread
from control.settings import ControlSettings

log = logging.getLogger(__name__)

SYSTEM = (
    "You edit a website project through the tools you are given. Paths are relative to the project folder. "
    "Make the smallest change that does what the owner asks, then reply with a one-paragraph summary."
)
FINISHED = ("end_turn", "stop_sequence", "max_tokens")
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120  # one Converse answer of up to 4096 tokens; the run's own deadline is EXECUTION_TIMEOUT


class BedrockExecutor:
    name = "bedrock"

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings

    def client(self):  # -> botocore client; created per run so credentials are looked up fresh
        config = Config(
            # total_max_attempts counts the first call too (botocore's max_attempts counts only retries).
            retries={"mode": "standard", "total_max_attempts": max(1, self.settings.bedrock_max_attempts)},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
        )
        return boto3.session.Session().client(
            "bedrock-runtime",
            region_name=self.settings.aws_region or "us-east-1",
            endpoint_url=self.settings.bedrock_endpoint_url,
            config=config,
        )

    async def _converse(self, client, **kwargs) -> dict:
        try:
            return await call_in_daemon_thread(client.converse, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code, message = error.get("Code", "Unknown"), error.get("Message", "")
            raise ExecutionError("Bedrock could not use the model: " + apierrors.describe(status, code, message)) from None
        except BotoCoreError as exc:  # no credentials, a timeout, a refused connection
            kind = type(exc).__name__
            named = apierrors.cause(code=kind)
            raise ExecutionError(f"Bedrock could not use the model: {named} ({kind})" if named else f"Bedrock could not be reached: {kind}") from None

    async def run(self, request: RunRequest, emit: Emit) -> RunResult:
        allowed = tools.READ_TOOLS if request.plan_only else tools.READ_TOOLS + tools.WRITE_TOOLS
        client = await call_in_daemon_thread(self.client)
        messages: list[dict] = [{"role": "user", "content": [{"text": build_prompt(request)}]}]
        touched: list[str] = []
        texts: list[str] = []
        for turn in range(1, max(1, self.settings.claude_max_turns) + 1):
            response = await self._converse(
                client,
                modelId=self.settings.bedrock_model_id,
                system=[{"text": SYSTEM}],
                messages=messages,
                toolConfig=tools.tool_config(allowed),
                inferenceConfig={"maxTokens": 4096},
            )
            message = response.get("output", {}).get("message") or {"role": "assistant", "content": []}
            messages.append(message)
            texts = [block["text"] for block in message.get("content", []) if "text" in block]
            for text in texts:
                emit({"type": "assistant", "text": text})
            stop = response.get("stopReason")
            if stop == "tool_use":
                results = [self._tool(request, block["toolUse"], allowed, touched, emit) for block in message["content"] if "toolUse" in block]
                messages.append({"role": "user", "content": results})
                continue
            if stop in FINISHED:
                return RunResult(True, "\n".join(texts).strip(), files_touched=touched, turns=turn)
            return RunResult(False, "\n".join(texts).strip(), f"the model stopped: {stop}", files_touched=touched, turns=turn)
        return RunResult(
            False, "\n".join(texts).strip(), f"stopped after {self.settings.claude_max_turns} turns (CLAUDE_MAX_TURNS)",
            files_touched=touched, turns=self.settings.claude_max_turns,
        )

    @staticmethod
    def _tool(request: RunRequest, use: dict, allowed: tuple[str, ...], touched: list[str], emit: Emit) -> dict:
        name, args = use.get("name", ""), use.get("input")
        path = args.get("path") if isinstance(args, dict) else None
        emit({"type": "tool", "tool": name, "file": path})
        try:
            text = tools.call(request.worktree, name, args, allowed)
        except tools.ToolError as exc:
            emit({"type": "tool_error", "tool": name, "file": path, "error": str(exc)})
            return {"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": str(exc)}], "status": "error"}}
        if name in tools.WRITE_TOOLS and isinstance(path, str):
            rel = str(tools.safe_path(request.worktree, path).relative_to(request.worktree.resolve()))
            if rel not in touched:
                touched.append(rel)
            emit({"type": "file_changed", "file": rel})
        return {"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": text}], "status": "success"}}
