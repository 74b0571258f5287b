"""The ground floor: settings, the error tree, the retry rule, file spooling, the URL allow-list,
and the runtime every long-running command lives in (signals, grace, exit codes).

It imports no other package of ``worker``; every other package may import it.
"""
