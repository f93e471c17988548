"""Strata inside other inference engines: each module adapts one engine's KV connector
interface to the engine-agnostic connector core (``kvstore.connector``). An engine's own
package is imported only by its module, so the rest of Strata never needs it."""
