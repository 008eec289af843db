"""harden's own behaviour suites: what a configuration check cannot prove, tried for real.

Referenced from an image definition as ``tests: [harden:behaviour/container]`` (or ``/vm``); they
use the plugin's ``harden_image_config`` fixture besides testinfra's ``host``.
"""
