"""File system methods on the server side: handles, sandbox policies, and the helper process runner."""
