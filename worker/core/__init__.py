"""The ground floor: settings, the error tree, the retry rule, file spooling, the URL allow-list.

It imports no other package of ``worker``; every other package may import it.
"""
