// Config forms generated from a JSON Schema the API publishes (a job type's or a module's
// config_schema), validated in the browser by ajv8 and again by the API. Secret fields are
// write-only: their stored value never reaches the page; leaving one empty keeps it.
import Form from "@rjsf/core";
import type { ErrorSchema, RJSFSchema, UiSchema } from "@rjsf/utils";
import validator from "@rjsf/validator-ajv8";
import { forwardRef, useImperativeHandle, useMemo, useRef } from "react";

export type Config = Record<string, unknown>;
export interface SchemaFormHandle {
  /** Validate and show the errors at their fields; true when the data fits the schema. */
  validate(): boolean;
}

interface Props {
  schema: Record<string, unknown>;
  value: Config;
  onChange(value: Config): void;
  secretFields: string[];
  /** Errors from the API (422 details), at their fields. */
  extraErrors?: ErrorSchema;
  disabled?: boolean;
  idPrefix?: string;
}

/** The stored config minus its secrets: what a form may show. */
export function withoutSecrets(config: Config, secretFields: string[]): Config {
  const copy = { ...config };
  for (const key of secretFields) delete copy[key];
  return copy;
}

/** What to send: secrets typed in the form, the others left out (the API keeps them). */
export function secretsToSend(config: Config, secretFields: string[]): Config {
  const copy = { ...config };
  for (const key of secretFields) if (copy[key] === undefined || copy[key] === "") delete copy[key];
  return copy;
}

/** 422 details (``loc: ["body", "config", ...]``) as rjsf's error schema. */
export function configErrors(details: unknown, root = "config"): ErrorSchema | undefined {
  if (!Array.isArray(details)) return undefined;
  const out: Record<string, unknown> = {};
  for (const d of details as { loc?: unknown[]; msg?: string }[]) {
    const loc = Array.isArray(d.loc) ? d.loc.map(String) : [];
    const at = loc.indexOf(root);
    if (at < 0 || !d.msg) continue;
    let node = out;
    for (const key of loc.slice(at + 1)) node = (node[key] ??= {}) as Record<string, unknown>;
    const errs = ((node.__errors as string[] | undefined) ??= []);
    errs.push(d.msg);
  }
  return Object.keys(out).length ? (out as ErrorSchema) : undefined;
}

export const SchemaForm = forwardRef<SchemaFormHandle, Props>(function SchemaForm(
  { schema, value, onChange, secretFields, extraErrors, disabled, idPrefix = "config" },
  ref,
) {
  const form = useRef<Form<Config>>(null);
  useImperativeHandle(ref, () => ({ validate: () => form.current?.validateForm() ?? true }), []);

  const { formSchema, uiSchema } = useMemo(() => {
    const copy = structuredClone(schema) as RJSFSchema;
    const ui: UiSchema = { "ui:submitButtonOptions": { norender: true } };
    // A stored secret needs no value in the form: leaving it empty keeps it.
    if (Array.isArray(copy.required)) copy.required = copy.required.filter((k) => !secretFields.includes(k));
    for (const key of secretFields) {
      ui[key] = {
        "ui:widget": "password",
        "ui:placeholder": "write-only: leave empty to keep the stored value",
        "ui:autocomplete": "new-password",
      };
    }
    return { formSchema: copy, uiSchema: ui };
  }, [schema, secretFields]);

  return (
    <Form<Config>
      ref={form}
      tagName="div"
      schema={formSchema}
      uiSchema={uiSchema}
      formData={value}
      validator={validator}
      idPrefix={idPrefix}
      disabled={disabled}
      extraErrors={extraErrors}
      showErrorList={false}
      noHtml5Validate
      onChange={(e) => onChange((e.formData ?? {}) as Config)}
    />
  );
});
