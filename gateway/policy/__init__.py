"""The policy language: path rules, scopes and the one way a path is read (gateway.policy.paths)."""
