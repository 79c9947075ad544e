"""What people and other programs use: the CLI, the HTTP pages and API, the dashboard, the
Python client, the demo."""
