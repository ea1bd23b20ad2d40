"""secretscope: anomaly detection for secret-store audit logs."""

__version__ = "0.1.0"
