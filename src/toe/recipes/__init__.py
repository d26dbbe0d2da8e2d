"""Training recipes: each one parses its upstream project's flags plus the ToE flags and runs the engine."""
