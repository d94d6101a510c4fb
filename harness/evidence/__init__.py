"""What L2 said and did, as typed records: trace lines, messages, the evidence bundle."""
