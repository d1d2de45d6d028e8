"""Examples that ship with the project and that the README runs: support tickets and their processor."""
