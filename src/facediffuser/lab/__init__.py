"""The lab: the procedural world and the mini model trained in it. The layers below reach it only by the names of
:mod:`facediffuser.registry`, never by import.
"""
