"""The platform's domain: models, migrations, services, manifest schema and validation."""
