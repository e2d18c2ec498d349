"""The control API that Hermes calls: workspaces, git, Claude runs, state."""
