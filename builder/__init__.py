"""Applies a baseline to a target: remediation rendering, docker image and qemu VM targets."""
