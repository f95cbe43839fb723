"""The spend dashboard served by the proxy at /ui: server-rendered pages and SVG charts
over the shared database (ledger, hourly rollup, keys, outbox)."""
