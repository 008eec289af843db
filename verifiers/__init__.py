"""Checks that confirm every rule of a baseline on a built image or a running machine."""
