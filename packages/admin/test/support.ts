import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { parsePrometheusText, type Exposition } from './prometheus-text.js';

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request on a connection of its own (`Connection: close`), so connection counts stay exact. */
export function request(url: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: options.method ?? 'GET', headers: options.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer from ${url} within 10 s`)));
    req.end(options.body);
  });
}

/** GET /metrics of an admin listener, checked and parsed as a scraper would. */
export async function scrape(adminUrl: string): Promise<Exposition> {
  const answer = await request(`${adminUrl}/metrics`);
  expect(answer.status).toBe(200);
  expect(answer.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
  return parsePrometheusText(answer.body);
}

/** Polls `read` until it returns `expected` (bounded: 50 tries, 5 s); returns the last value read. */
export async function eventually<T>(read: () => Promise<T>, expected: T): Promise<T> {
  let value = await read();
  for (let i = 0; i < 50 && value !== expected; i++) {
    await sleep(100);
    value = await read();
  }
  return value;
}

/** `http://127.0.0.1:PORT` of a RunningProxy's address (`http://127.0.0.1:PORT` already, or `127.0.0.1:PORT`). */
export function httpUrl(address: string): string {
  return address.startsWith('http') ? address.replace(/\/$/, '') : `http://${address}`;
}
