"""Clients for judges behind OpenAI-compatible chat endpoints.

openai_compat  ChatClient, ChatRequest, ChatResult, JudgeUnavailableError: concurrent calls with
               retries, an on-disk cache and validate-then-cache
cache          the on-disk reply cache (one JSON file per request key)
images         video frames as base64 JPEG image parts
parsing        strict readers of judge replies (choices, scores, yes/no + score); InvalidReply

Import from the modules themselves: the parsing helpers stay free of the openai import.
"""
