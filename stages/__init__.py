"""DVC stage commands: each module is one Typer command that reads its params.yaml section."""
