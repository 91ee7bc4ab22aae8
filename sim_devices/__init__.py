"""Simulated hardware for multiscope: caproto IOCs run as separate processes.

Nothing in ``multiscope`` imports this package (an import-linter contract); the
runtime reaches these IOCs only over Channel Access. Start one with
``python -m sim_devices.demo --prefix DEMO: --port 5070`` or through
``multiscope.simctl``.
"""
