"""billstream workers: the HTTP ingress, one worker per bounded context, and the CLI."""
