"""The attack suite: one test per attack of the Uptane threat model (and TUF's additions).

README.md in this directory maps every attack to its test(s), here and elsewhere.
"""
