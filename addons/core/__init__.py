"""The gateway's core: plain modules that know nothing of mitmproxy.

Parsing (classifier, sigv4, endpoints), identity, policy, credentials, errors and the store live
here and are tested on their own; the addons in the package above are thin mitmproxy glue.
"""
