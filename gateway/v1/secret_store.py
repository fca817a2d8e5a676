"""SecretStore: each caller's secrets per prefab, encrypted at rest in Redis (Fernet, ``factory.sealing``).

One hash per caller and prefab (``keys.caller_secrets_key``), secret name → Fernet token. Values
are decrypted only to be sealed again into a call's request (``InvocationRequest.sealed_secrets``);
they are never logged, put in events or job records, or echoed in errors. The hash lives until its
last secret is deleted: it is the caller's configuration, like an API key, not a job's data.
"""

import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken

from factory.store import keys


class SecretStore:
    def __init__(self, client: aioredis.Redis, fernet: Fernet) -> None:
        self.client = client
        self.fernet = fernet

    async def put(self, caller_id: str, prefab_id: str, name: str, value: str) -> None:
        token = self.fernet.encrypt(value.encode())
        await self.client.hset(keys.caller_secrets_key(caller_id, prefab_id), name, token)

    async def names(self, caller_id: str, prefab_id: str) -> list[str]:
        raw: list[bytes] = await self.client.hkeys(keys.caller_secrets_key(caller_id, prefab_id))  # type: ignore[assignment]
        return sorted(name.decode() for name in raw)

    async def delete(self, caller_id: str, prefab_id: str, name: str) -> bool:
        removed: int = await self.client.hdel(keys.caller_secrets_key(caller_id, prefab_id), name)
        return removed > 0

    async def values(self, caller_id: str, prefab_id: str) -> dict[str, str]:
        """The caller's secrets for the prefab, in clear; a value the key no longer opens is left out."""
        raw: dict[bytes, bytes] = await self.client.hgetall(keys.caller_secrets_key(caller_id, prefab_id))  # type: ignore[assignment]
        found: dict[str, str] = {}
        for name, token in raw.items():
            try:
                found[name.decode()] = self.fernet.decrypt(token).decode()
            except InvalidToken:
                continue  # stored under another FACTORY_SECRETS_KEY: as good as absent
        return found
