"""Wire contract shared by train-supervisor and train-launch.

Kept apart from `supervisor` (also supervisord's import name) so that the
worker side never needs to import it.
"""
