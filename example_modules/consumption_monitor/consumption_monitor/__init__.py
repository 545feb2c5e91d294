"""consumption-monitor: data-centre power metering on autoplat (see ../manifest.json, docs/consumption-monitor.md)."""
