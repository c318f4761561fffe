"""Onboard software for city-management patrol cars.

Data flows one way: frames + GPS -> detect -> locate -> deduplicate -> events -> outbox -> MQTT.
`vehicle.pipeline` is the only module that wires the stages together.
"""

__version__ = "0.1.0"
