"""deploy/edge.yaml: linted with cfn-lint, and its parts used against moto's real APIs.

The task definition, resolved with a client's parameters, is registered with moto's ECS
(botocore checks every field name and type on the way); the sessions table is created in
moto's DynamoDB and used the way Hermes and the edge use it. The settings the template
gives the container are read by the edge's own Settings, so a setting the edge refuses
fails here, not on Fargate.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from cfnlint.decode import decode

from control.dynamo import session_item, update_request
from core.ids import ThreadRef
from edge.settings import Settings
from tests.fixtures_dynamodb import AWS_ENV, FakeDynamo
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "edge.yaml"
BIN = Path(sys.executable).parent
NO_VALUE = object()
PARAMETERS = {
    "DomainName": "amelia.webordinary.com",
    "CertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/abc",
    "VpcId": "vpc-0123",
    "VpcCidr": "10.0.0.0/16",
    "LoadBalancerSubnetIds": ["subnet-a", "subnet-b"],
    "TaskSubnet1": "subnet-c",
    "TaskSubnet2": "subnet-d",
    "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/webordinary-edge:1",
    "GitHubTokenSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:github-AbCdEf",
    "ApiTokenSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:api-AbCdEf",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "amelia-edge",
    "AWS::NoValue": NO_VALUE,
}


@pytest.fixture(scope="module")
def template() -> dict:
    parsed, errors = decode(str(TEMPLATE))
    assert not errors, errors
    return parsed


class Resolver:
    """Just enough of CloudFormation's intrinsic functions for this template."""

    def __init__(self, template: dict, **overrides: Any) -> None:
        self.template = template
        self.values = {name: spec.get("Default") for name, spec in template["Parameters"].items()}
        self.values.update(PARAMETERS, **overrides)

    def ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        assert name in self.template["Resources"], f"Ref to unknown {name}"
        return f"{name}-id"

    def attr(self, name: str, attribute: str) -> str:
        assert name in self.template["Resources"], f"GetAtt of unknown {name}"
        return f"arn:aws:test:us-east-1:123456789012:{name}/{attribute}"

    def condition(self, name: str) -> bool:
        """A condition, by name."""
        return bool(self(self.template["Conditions"][name]))

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self(item) for item in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.attr(*(arg.split(".", 1) if isinstance(arg, str) else arg))
            if key == "Fn::Sub":
                def sub(match: re.Match) -> str:
                    name = match.group(1)
                    return str(self.attr(*name.split(".", 1)) if "." in name and not name.startswith("AWS::") else self.ref(name))
                return re.sub(r"\$\{([^}!]+)\}", sub, arg)
            if key == "Fn::If":
                name, yes, no = arg
                return self(yes if self.condition(name) else no)
            if key == "Fn::Equals":
                return self(arg[0]) == self(arg[1])
            if key == "Fn::Not":
                return not self(arg[0])
        return {k: v for k, v in ((k, self(v)) for k, v in node.items()) if v is not NO_VALUE}


def api_names(node: Any) -> Any:
    """CloudFormation's property names to the ECS API's (camelCase); maps such as Options stay."""
    special = {"EFSVolumeConfiguration": "efsVolumeConfiguration", "FilesystemId": "fileSystemId", "IAM": "iam"}
    if isinstance(node, list):
        return [api_names(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        name = special.get(key) or key[0].lower() + key[1:]
        out[name] = value if key == "Options" else api_names(value)
    return out


def props(template: dict, name: str, **overrides: Any) -> dict:
    return Resolver(template, **overrides)(template["Resources"][name]["Properties"])


def test_cfn_lint_passes():
    result = subprocess.run([str(BIN / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def moto(monkeypatch) -> Iterator[str]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = FakeDynamo(free_port(), "unused")
    server.start()
    yield server.endpoint
    server.stop()


def test_task_definition_registers_with_ecs(template, moto):
    definition = api_names(props(template, "TaskDefinition"))
    definition["cpu"], definition["memory"] = str(definition["cpu"]), str(definition["memory"])
    ecs = boto3.session.Session().client("ecs", endpoint_url=moto, region_name="us-east-1")
    registered = ecs.register_task_definition(**definition)["taskDefinition"]
    assert registered["family"] == "amelia-edge-edge"
    assert registered["requiresCompatibilities"] == ["FARGATE"] and registered["networkMode"] == "awsvpc"
    assert registered["volumes"][0]["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"] == "AccessPoint-id"

    edge = ecs.describe_task_definition(taskDefinition=registered["taskDefinitionArn"])["taskDefinition"]["containerDefinitions"][0]
    assert edge["mountPoints"] == [{"sourceVolume": "workspace", "containerPath": "/workspace", "readOnly": False}]
    assert {s["name"]: s["valueFrom"] for s in edge["secrets"]} == {
        "GITHUB_TOKEN": PARAMETERS["GitHubTokenSecretArn"], "EDGE_API_TOKEN": PARAMETERS["ApiTokenSecretArn"]}
    assert edge["logConfiguration"]["logDriver"] == "awslogs"
    assert edge["portMappings"][0]["containerPort"] == 8080

    env = {e["name"]: e["value"] for e in edge["environment"]}
    assert not {"GITHUB_TOKEN", "EDGE_API_TOKEN"} & env.keys()  # secrets only, never plain values
    settings = Settings.from_env({**env, "EDGE_API_TOKEN": "t" * 40, "EDGE_HOST": "0.0.0.0"})
    assert settings.public_hosts == ("edit.amelia.webordinary.com",)
    assert edge["stopTimeout"] >= settings.drain_seconds + 10
    nofile = next(u for u in edge["ulimits"] if u["name"] == "nofile")
    workers = 4  # EDGE_WORKERS=auto on the largest Cpu allowed (4096 = 4 vCPU)
    assert nofile["softLimit"] >= 2 * settings.max_connections * workers
    # The image's HEALTHCHECK, unchanged.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert edge["healthCheck"]["command"][-1] in dockerfile
    assert edge["healthCheck"]["startPeriod"] >= 60


def test_load_balancer_routes_the_edit_host_and_the_host_mode_names(template):
    task = props(template, "TaskDefinition")["ContainerDefinitions"][0]
    env = {e["Name"]: e["Value"] for e in task["Environment"]}
    hosts = set()
    for rule in ("EditHostRule", "SessionHostRule"):
        spec = props(template, rule)
        assert spec["Actions"] == [{"Type": "forward", "TargetGroupArn": "TargetGroup-id"}]
        hosts.update(spec["Conditions"][0]["HostHeaderConfig"]["Values"])
    assert hosts == {env["EDGE_PUBLIC_HOSTS"], env["EDGE_SESSION_HOSTS"].replace("{session}", "*")}
    assert props(template, "TargetGroup")["HealthCheckPath"] == "/health"
    assert props(template, "TargetGroup")["Port"] == 8080
    assert props(template, "HttpsListener")["Certificates"] == [{"CertificateArn": PARAMETERS["CertificateArn"]}]


def test_workspace_access_point_is_uid_1000(template):
    point = props(template, "AccessPoint")
    assert point["PosixUser"] == {"Uid": "1000", "Gid": "1000"}
    assert point["RootDirectory"]["Path"] == "/workspace"
    assert point["RootDirectory"]["CreationInfo"]["OwnerUid"] == "1000"


def test_task_role_may_invoke_bedrock_and_update_the_sessions_table(template):
    statements = props(template, "TaskRole")["Policies"][0]["PolicyDocument"]["Statement"]
    actions = {action: s["Resource"] for s in statements for action in s["Action"]}
    assert {"bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"} <= actions.keys()
    table_arn = "arn:aws:dynamodb:us-east-1:123456789012:table/webordinary-edit-sessions"
    for action in ("dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:GetItem"):  # what control/dynamo.py calls
        assert table_arn in actions[action]


def test_hermes_settings(template):
    """Hermes calls the task's address inside the VPC without a token; its previews use the public URL."""
    env = {e["Name"]: e["Value"] for e in props(template, "TaskDefinition")["ContainerDefinitions"][0]["Environment"]}
    assert env["EDGE_API_TRUSTED_NETWORKS"] == PARAMETERS["VpcCidr"]
    assert env["EDGE_PUBLIC_URL"] == "https://edit.amelia.webordinary.com"
    assert env["DYNAMODB_TABLE"] == "webordinary-edit-sessions"
    assert "DEFAULT_REPO_URL" not in env
    env = {e["Name"]: e["Value"] for e in props(template, "TaskDefinition", DefaultRepoUrl="https://github.com/a/b.git")
           ["ContainerDefinitions"][0]["Environment"]}
    assert env["DEFAULT_REPO_URL"] == "https://github.com/a/b.git"
    assert Resolver(template, HermesSecurityGroupId="sg-hermes").condition("FromHermes")
    assert props(template, "HermesIngress", HermesSecurityGroupId="sg-hermes")["FromPort"] == 8080


def test_sessions_table_has_hermes_schema_and_takes_the_edges_updates(template, moto):
    spec = props(template, "SessionsTable")
    ttl = spec.pop("TimeToLiveSpecification")
    spec.pop("PointInTimeRecoverySpecification")
    assert spec["TableName"] == "webordinary-edit-sessions"
    assert spec["KeySchema"] == [{"AttributeName": "sessionId", "KeyType": "HASH"}, {"AttributeName": "userId", "KeyType": "RANGE"}]
    dynamodb = boto3.session.Session().client("dynamodb", endpoint_url=moto, region_name="us-east-1")
    dynamodb.create_table(**spec)
    dynamodb.update_time_to_live(TableName=spec["TableName"], TimeToLiveSpecification=ttl)
    assert dynamodb.describe_time_to_live(TableName=spec["TableName"])["TimeToLiveDescription"]["AttributeName"] == "ttl"

    # The edge's own UpdateItem for a session (control/dynamo.py), then Hermes's reads.
    item = session_item("t1-0123456789", ThreadRef("amelia", "owner", "t1"), "ready",
                        "https://edit.amelia.webordinary.com/session/t1-0123456789/", "task-1", 1_700_000_000)
    dynamodb.update_item(**update_request(spec["TableName"], {"sessionId": "t1-0123456789", "userId": "owner"}, item))
    key = {"sessionId": {"S": "t1-0123456789"}, "userId": {"S": "owner"}}
    stored = dynamodb.get_item(TableName=spec["TableName"], Key=key)["Item"]
    assert "ttl" in stored and stored["status"] == {"S": item["status"]}
    found = dynamodb.query(TableName=spec["TableName"], IndexName="StatusIndex", KeyConditionExpression="#s = :s",
                           ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": {"S": item["status"]}})
    assert [i["sessionId"]["S"] for i in found["Items"]] == ["t1-0123456789"]
