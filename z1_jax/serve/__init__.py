"""`z1 serve`: an OpenAI-compatible server on the decode engine (see `command.py`)."""
