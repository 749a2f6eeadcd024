"""The agent protocol: the frames between a qube's guest agent and the
host, shared by VM qubes and preloaded container disposables."""
