"""What the routers of every domain share: the services built at start-up and the
dependencies routes declare (`deps.py`)."""
