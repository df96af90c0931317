"""The web console: server-rendered pages whose scripts call the JSON API with the session
cookie and a double-submit CSRF token."""
