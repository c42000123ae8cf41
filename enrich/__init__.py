"""The transform: AMI events -> call records and legs, rated. The core (calls, events, partition,
tariffs, spend, rating) is pure: no network, no clock; stage.py is the enrich process on Kafka."""
