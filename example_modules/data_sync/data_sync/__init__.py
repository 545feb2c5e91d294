"""data-sync: the example module of autoplat (see ../manifest.json)."""
