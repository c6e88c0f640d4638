"""The HTTP ingress: validates requests and publishes commands and usage; never changes
domain state itself."""
