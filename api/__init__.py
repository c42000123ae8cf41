"""The panel API: call history and recordings per tenant and role, over HTTP (``pbxpipe api``).

app.py builds the Litestar application; access.py says what each role may do and which calls it
sees; auth.py turns a bearer credential (an API key or a JWT) into a Principal; keys.py keeps API
keys, groups and tenants; params.py parses query parameters; one package per resource (calls/,
recordings/, stats/, export/, panel/) holds its handlers (http.py) and what a request means
(services.py). Every read goes through store.tenancy.
"""
