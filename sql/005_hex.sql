-- Hex as the views show it: lower-case with one 0x. BlockDB documents hashes and addresses as
-- bare hex (PROTOCOLS.md 2.6), but nothing enforces it: '0x' || x would make '0x0x...' of a
-- prefixed one, which then matches no other provider's copy of the same hash.
CREATE OR REPLACE MACRO hex_bare(x) AS CASE WHEN lower(x) LIKE '0x%' THEN substr(lower(x), 3) ELSE lower(x) END;
CREATE OR REPLACE MACRO hex_0x(x) AS '0x' || hex_bare(x);
