"""Where profile windows live: `api` (what the UI and exporters read), `sqlite` (the
embedded store the daemon writes), with its `schema`, `intern`, `read` and `retention`."""
