"""lgpd-analyzer on Portuguese samples: exactly the expected findings, positions, masks and levels."""

from __future__ import annotations

import json

import pytest

from ztmesh.plugins.sandbox import Limits

# (text, [(type, exact matched text)], compliance level)
SAMPLES = [
    ("CPF do titular: 529.982.247-25.", [("cpf", "529.982.247-25")], "medium"),
    ("cpf 52998224725 informado", [("cpf", "52998224725")], "medium"),
    ("Documento 526.018.159-06 anexado", [("cpf", "526.018.159-06")], "medium"),
    ("CPF 083.016.613-05 e CPF 186.091.390-34", [("cpf", "083.016.613-05"), ("cpf", "186.091.390-34")], "high"),
    ("CPF inválido 529.982.247-26 não conta", [], "low"),
    ("CPF 111.111.111-11 é sequência repetida", [], "low"),
    ("número 123.456.789-00 com dígito errado", [], "low"),
    ("protocolo 5299822472512 longo demais", [], "low"),
    ("Empresa CNPJ 11.222.333/0001-81 contratada", [("cnpj", "11.222.333/0001-81")], "low"),
    ("cnpj 99603082000126 do fornecedor", [("cnpj", "99603082000126")], "low"),
    (
        "CNPJ 46.281.948/0001-63 e 11.222.333/0001-81",
        [("cnpj", "46.281.948/0001-63"), ("cnpj", "11.222.333/0001-81")],
        "medium",
    ),
    ("CNPJ 11.222.333/0001-82 inválido", [], "low"),
    ("Dr. João, CRM/SP 123456, assina o laudo", [("crm", "CRM/SP 123456")], "low"),
    ("médica CRM-RJ 54321 de plantão", [("crm", "CRM-RJ 54321")], "low"),
    ("CRM SP 1234567 confirmado", [("crm", "CRM SP 1234567")], "low"),
    ("registro CRM/XX 123456 com UF inexistente", [], "low"),
    ("CRM/SP 12 curto demais", [], "low"),
    ("Contato: maria.silva@hospital.com.br.", [("email", "maria.silva@hospital.com.br")], "low"),
    ("envie para joao+exames@clinica.org hoje", [("email", "joao+exames@clinica.org")], "low"),
    ("usuario@localhost não é endereço completo", [], "low"),
    ("Telefone +55 (11) 91234-5678 celular", [("phone", "+55 (11) 91234-5678")], "low"),
    ("fixo (21) 3456-7890 comercial", [("phone", "(21) 3456-7890")], "low"),
    ("ligar 11 98765-4321 amanhã", [("phone", "11 98765-4321")], "low"),
    ("+55 31 987654321 whatsapp", [("phone", "+55 31 987654321")], "low"),
    ("código 12345678 sem DDD", [], "low"),
    ("A paciente Maria da Silva foi internada.", [("patient_name", "Maria da Silva")], "medium"),
    ("Paciente Antônio Souza recebeu alta", [("patient_name", "Antônio Souza")], "medium"),
    ("prontuário nº 48213 atualizado", [("medical_record", "48213")], "medium"),
    ("Prontuario 7781234 arquivado", [("medical_record", "7781234")], "medium"),
    ("O paciente relatou dor abdominal.", [], "low"),
    ("Evolução clínica estável, sem intercorrências.", [], "low"),
    ("", [], "low"),
    (
        "Paciente Carla Dias, CPF 529.982.247-25, prontuário nº 9912, tel (11) 91234-5678",
        [
            ("patient_name", "Carla Dias"),
            ("cpf", "529.982.247-25"),
            ("medical_record", "9912"),
            ("phone", "(11) 91234-5678"),
        ],
        "critical",
    ),
    (
        "paciente João Lima atendido pelo CRM/MG 99887",
        [("patient_name", "João Lima"), ("crm", "CRM/MG 99887")],
        "critical",
    ),
]


def expected(text: str, findings: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    data, out, cursor = text.encode(), [], 0
    for kind, match in findings:
        start = data.index(match.encode(), cursor)
        out.append((kind, start, start + len(match.encode())))
        cursor = start + 1
    return sorted(out, key=lambda f: f[1])


@pytest.fixture(scope="module")
def analyze(analyzer_wasm, session_sandbox):
    plugin = session_sandbox.compile(analyzer_wasm)
    return lambda text: session_sandbox.call(plugin, "analyze", json.dumps({"text": text}).encode(), Limits()).output


@pytest.mark.parametrize(("text", "findings", "level"), SAMPLES, ids=[f"s{i:02d}" for i in range(len(SAMPLES))])
def test_findings(analyze, text, findings, level):
    result = analyze(text)
    got = [(f["type"], f["start"], f["end"]) for f in result["findings"]]
    assert got == expected(text, findings)
    assert result["compliance_level"] == level
    assert 0 <= result["risk_score"] <= 100


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("CPF 529.982.247-25", "***.***.***-25"),
        ("CNPJ 11.222.333/0001-81", "**.***.***/****-81"),
        ("email maria.silva@hospital.com.br", "m***@hospital.com.br"),
        ("tel (11) 91234-5678", "(**) *****-5678"),
        ("CRM/SP 123456", "CRM/SP ****56"),
        ("paciente Maria da Silva", "M*** d*** S***"),
    ],
)
def test_values_are_masked(analyze, text, masked):
    (finding,) = analyze(text)["findings"]
    assert finding["masked"] == masked
    assert 0 < finding["confidence"] <= 1


def test_json_escapes_in_input_are_decoded(analyze):
    result = analyze('Paciente \u00c9rica Nunes\nCPF\t529.982.247-25 "aspas"')
    assert [f["type"] for f in result["findings"]] == ["patient_name", "cpf"]


def test_bad_input_is_a_plugin_error(analyzer_wasm, session_sandbox):
    from ztmesh.plugins.errors import PluginFailed

    plugin = session_sandbox.compile(analyzer_wasm)
    with pytest.raises(PluginFailed, match='string field \\\\"text\\\\"|string field "text"'):
        session_sandbox.call(plugin, "analyze", b'{"texto": 1}', Limits())
