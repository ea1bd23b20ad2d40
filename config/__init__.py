"""The default configuration, detection rules and dashboards, installed as
``secretscope.defaults``: this folder is their one source, for checkouts and wheels alike."""
