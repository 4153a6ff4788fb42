"""The outbound uplink to the police hub. Filled by the uplink issue."""
