"""Sharded controllers: replicas split the policies over a ring of member Leases.

`ring` (who owns a key, pure), `members` (who is alive, from member Leases, pure),
`claims` (the ownership marker and the hand-over rule, pure) and `shards` (one
replica's claims, releases and the guard around its reconciles).
"""
