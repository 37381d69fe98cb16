"""Interpreter support: find an interpreter in a process, and the layouts and
line tables a stack walker needs to turn its frames into (function, file, line).
"""
