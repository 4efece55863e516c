"""The code ``deployerp`` and ``deployally`` share: clients, resources, errors, credentials. Private: import the
public names from ``deployerp`` or ``deployally``, which re-export them; this package may change without notice.

    _client.py       ClientBase / AsyncClientBase and the Platform value each package fills in
    _resources.py    client.auth and client.api_keys, each endpoint described once
    _errors.py       the one exception tree (drawn in its docstring)
    _credentials.py  api_key argument, then the platform's variable, then (DeployAlly) its config file
"""
