"""Tests of the agentguard command line."""
