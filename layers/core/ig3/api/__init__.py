"""The api function's HTTP surface: one Powertools resolver, one router per capability."""
