"""The command line (pylut run / chat / serve / bench / convert), the chat REPL and the
OpenAI-compatible HTTP server, all built on the public pylut API."""
