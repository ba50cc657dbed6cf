// Reads DIR/.env the way a Vite build does, twice: with dotenv + dotenv-expand
// as Vite calls them, and with Vite's own loadEnv. Prints both as JSON.
import fs from 'node:fs';
import path from 'node:path';
import dotenv from 'dotenv';
import { expand } from 'dotenv-expand';
import { loadEnv } from 'vite';

const dir = process.argv[2];
const parsed = dotenv.parse(fs.readFileSync(path.join(dir, '.env')));
expand({ parsed, processEnv: {} });
const vite = loadEnv('production', dir);
process.stdout.write(JSON.stringify({ dotenv: parsed, vite }));
