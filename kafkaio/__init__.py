"""The Kafka plumbing the stages share: clients and topics, consuming, dead letters, the records
topic's wire format. Depends on contracts only."""
