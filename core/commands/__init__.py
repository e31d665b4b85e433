"""The CLI's commands, one module per area; `core.cli` loads each only when it is invoked."""
