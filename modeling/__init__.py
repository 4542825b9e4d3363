"""Hub-remote-code-ready model folders: each architecture's folder imports only from itself."""
