"""Signalbox data plane: stateless nodes that serve the Infer API.

Request path: authenticate -> resolve tenant policy -> govern input -> route ->
dispatch (retries, fallbacks, breakers) -> govern output -> account -> evidence.
Everything a request needs comes from the signed snapshot the node holds; this
package never imports ``controlplane``.
"""
