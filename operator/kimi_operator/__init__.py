"""kimi-operator: serve Kimi K2.5 on Kubernetes with SGLang."""

__version__ = "0.1.0"
